"""A plugin whose author forgot @hookimpl: pluggy would silently see nothing."""


def register_runtimes(register):
    raise AssertionError("never called")
