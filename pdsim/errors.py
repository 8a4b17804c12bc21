"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class PdsimError(Exception):
    """An error caused by the user's input (a config, a trace, a profile, an option).

    The message must name the file, the line or field, and what was expected.
    """


class ConfigError(PdsimError):
    pass


class TraceError(PdsimError):
    pass


class ProfileError(PdsimError):
    pass
