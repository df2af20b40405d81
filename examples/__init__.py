"""Examples of user extensions, importable from the project root (`examples.module:Class`)."""
