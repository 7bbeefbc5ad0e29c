"""The one exception a user can cause. The CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input, a missing file or extra, a budget exceeded: anything the user can fix."""


def missing_extra(package: str, extra: str) -> UserError:
    """The one-line message for an optional dependency that is not installed."""
    return UserError(f"{package} is not installed: run  pip install -e '.[{extra}]'  (or `make setup`)")


class BudgetExceeded(UserError):
    """Spending would pass the budget: the stage saved everything finished and stopped cleanly."""
