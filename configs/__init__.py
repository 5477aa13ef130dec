"""The shipped configs (package data: see ``backmice_vision.resources``)."""
