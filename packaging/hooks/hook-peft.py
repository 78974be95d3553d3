"""PyInstaller hook for peft: collect the modules a real ``import peft`` loads.

peft imports transformers, which loads most of itself lazily (``_LazyModule``), so static
analysis misses modules such as ``transformers.models.auto.modeling_auto`` and the frozen
application fails with "Could not import module 'AutoModel'". The hook imports peft in an
isolated build-time interpreter and turns every transformers/peft/accelerate/huggingface_hub
module it loaded into a hidden import; the version checks of these packages need their
distribution metadata too.
"""

from __future__ import annotations

from PyInstaller.utils.hooks import collect_data_files, copy_metadata, isolated

LAZY_PACKAGES = ("peft", "transformers", "accelerate", "huggingface_hub", "tokenizers")


@isolated.decorate
def _loaded_modules(prefixes: tuple[str, ...]) -> list[str]:
    import sys

    import peft  # noqa: F401
    import peft.tuners.lora  # noqa: F401 - what engine.lora uses
    from peft import (  # noqa: F401
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        inject_adapter_in_model,
        set_peft_model_state_dict,
    )

    return sorted(m for m in sys.modules if m.split(".")[0] in prefixes)


hiddenimports = _loaded_modules(LAZY_PACKAGES)
datas = collect_data_files("peft")
for _dist in ("peft", "transformers", "accelerate", "huggingface_hub", "tokenizers", "safetensors"):
    try:
        datas += copy_metadata(_dist)
    except Exception:  # noqa: BLE001 - a missing optional distribution is fine
        pass
module_collection_mode = {"peft": "pyz+py", "transformers": "pyz+py"}
