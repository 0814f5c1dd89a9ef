"""``mcluster demo``: placeholder until the demo farm lands."""


def run_demo(nodes: int, seconds: float | None, dashboard: bool, redis_url: str | None) -> int:
    raise NotImplementedError
