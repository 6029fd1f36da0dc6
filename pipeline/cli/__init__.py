"""Command lines: parse arguments, call the library, map the result to an exit code."""
