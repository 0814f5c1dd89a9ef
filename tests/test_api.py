"""The public API: everything in ``mcluster.__all__`` exists and is documented."""

import mcluster


def test_public_names_exist_and_have_docs() -> None:
    for name in mcluster.__all__:
        value = getattr(mcluster, name)
        if name != "__version__":
            assert (value.__doc__ or "").strip(), f"{name} has no docstring"
