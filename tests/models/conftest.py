import pytest

from models.anydoor_module import AnyDoorModule
from tests.fakes import TINY_MODEL_KWARGS


@pytest.fixture(scope="module")
def tiny_module() -> AnyDoorModule:
    return AnyDoorModule(**TINY_MODEL_KWARGS)
