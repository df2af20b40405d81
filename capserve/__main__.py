from capserve.cli import app

app(prog_name="capserve")
