"""tomeplug evaluation: datasets, metrics, FLOPs, latency, the harness and the demo.

Needs the ``eval`` extra (``pip install "tomeplug[eval]"``): importing this package without it raises an
``ImportError`` that names the missing distributions and that command.
"""

import importlib.util

EVAL_REQUIREMENTS = {
    "fvcore": "fvcore",
    "hydra": "hydra-core",
    "omegaconf": "hydra-core",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "PIL": "pillow",
    "numpy": "numpy",
    "cv2": "opencv-python-headless",
}
"""Import name -> distribution of everything the evaluation imports beyond tomeplug's core."""


def missing_requirements() -> list[str]:
    """The distributions of the ``eval`` extra whose modules cannot be found, sorted."""
    return sorted({dist for module, dist in EVAL_REQUIREMENTS.items() if importlib.util.find_spec(module) is None})


if _missing := missing_requirements():
    raise ImportError(
        f"tomeplug_eval needs the 'eval' extra; missing: {', '.join(_missing)}. "
        'Install it with: pip install "tomeplug[eval]" (plus the model extras you evaluate, e.g. tomeplug[sam,eval])'
    )
