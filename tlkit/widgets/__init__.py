"""ipywidgets UIs for the lessons; every callback is a plain function tests can call without a browser."""
