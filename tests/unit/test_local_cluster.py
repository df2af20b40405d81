"""Reading the answers of the short Ray drivers the local cluster asks about nodes and apps."""

from cluster.local_cluster import DRIVER_ANSWER, driver_answer


def test_the_answer_is_found_among_rays_cluster_warnings() -> None:
    # The warning's line is what a driver printed after its answer in a CI run.
    stdout = (
        f"{DRIVER_ANSWER}2\n"
        "\t(2) raylet has lagging heartbeats due to slow network or busy workload.\n"
    )
    assert driver_answer(stdout) == 2


def test_a_json_answer_keeps_its_structure() -> None:
    stdout = f'noise\n{DRIVER_ANSWER}{{"head": "ab12", "worker-1": null}}\n'
    assert driver_answer(stdout) == {"head": "ab12", "worker-1": None}


def test_a_driver_that_printed_no_answer_gives_none() -> None:
    assert driver_answer("\t(2) raylet has lagging heartbeats due to slow network.\n") is None
    assert driver_answer("") is None
