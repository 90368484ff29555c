from outpost_iot.wire import installed_version


def version() -> str:
    return installed_version()
