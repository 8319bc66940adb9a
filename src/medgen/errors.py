"""Project exceptions. Each message is one line a user can act on; the CLI prints it and exits 1."""


class MedgenError(Exception):
    """Base class for every error medgen reports to a user."""


class ConfigError(MedgenError):
    """params.yaml, a profile or an override is wrong; the message names the key."""


class DataError(MedgenError):
    """A dataset file is missing, truncated or does not follow the MedMNIST layout."""


class TransientError(MedgenError):
    """A failure that retrying may fix (an unreachable tracking server, a locked database); Prefect retries it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: stages unwind as for KeyboardInterrupt (runs KILLED, trials FAIL, outputs kept)."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
