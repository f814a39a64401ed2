"""tomeplug's built-in adapters, registered through the ``tomeplug`` entry points like any plugin."""

from tomeplug.hookspecs import hookimpl


@hookimpl
def tomeplug_register_adapters(register):
    """Register the built-in adapters."""
    from tomeplug_adapters.hf_sam2_hiera import HFSam2HieraAdapter
    from tomeplug_adapters.hf_sam2_memory_attention import (
        HFSam2MemoryAttentionAdapter,
        HFSam3TrackerMemoryAttentionAdapter,
    )
    from tomeplug_adapters.hf_sam3_vit import HFSam3ViTAdapter
    from tomeplug_adapters.hf_sam_vit import HFSamHQViTAdapter, HFSamViTAdapter
    from tomeplug_adapters.sam2_hiera import Sam2HieraAdapter
    from tomeplug_adapters.sam2_memory_attention import Sam2MemoryAttentionAdapter
    from tomeplug_adapters.sam3_memory_attention import Sam3MemoryAttentionAdapter
    from tomeplug_adapters.sam3_vit import Sam3ViTAdapter
    from tomeplug_adapters.sam_vit import HQSamViTAdapter, SamViTAdapter
    from tomeplug_adapters.timm_samvit import TimmSamViTAdapter
    from tomeplug_adapters.timm_vit import TimmViTAdapter
    from tomeplug_adapters.ultralytics_sam import (
        UltralyticsSam2HieraAdapter,
        UltralyticsSam2MemoryAttentionAdapter,
        UltralyticsSam3ViTAdapter,
        UltralyticsSamViTAdapter,
    )

    register(SamViTAdapter())
    register(HQSamViTAdapter())
    register(Sam2HieraAdapter())
    register(Sam3ViTAdapter())
    register(TimmViTAdapter())
    register(TimmSamViTAdapter())
    register(UltralyticsSamViTAdapter())
    register(UltralyticsSam2HieraAdapter())
    register(UltralyticsSam3ViTAdapter())
    register(HFSamViTAdapter())
    register(HFSamHQViTAdapter())
    register(HFSam2HieraAdapter())
    register(HFSam3ViTAdapter())
    register(Sam2MemoryAttentionAdapter())
    register(UltralyticsSam2MemoryAttentionAdapter())
    register(HFSam2MemoryAttentionAdapter())
    register(HFSam3TrackerMemoryAttentionAdapter())
    register(Sam3MemoryAttentionAdapter())
