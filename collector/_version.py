from importlib import metadata


def version() -> str:
    try:
        return metadata.version("outpost")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        return "0+unknown"
