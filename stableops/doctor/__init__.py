"""The NaN doctor: PLACEHOLDER, being implemented."""


class Report:  # placeholder
    pass


def diagnose(model, x, y=None, *, loss=None, batch_size=32):
    raise NotImplementedError("diagnose is not implemented yet")
