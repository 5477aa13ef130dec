"""The shipped model bundles, one folder per model (package data: see ``backmice_vision.resources``)."""
