"""SALAD speech LLMs for transformers: config, model, processor, pipeline, and their Auto-class registration.

Importing this package registers `salad` with `AutoConfig`, `AutoModel`, `AutoModelForMultimodalLM` (what the
`any-to-any` pipeline loads) and `AutoProcessor`, and the `salad-speech-to-text` pipeline. Checkpoints saved from
here carry this code, so `trust_remote_code=True` loads them where salad is not installed; their config names
`SaladAnyToAnyPipeline` for the `any-to-any` task, which is never registered globally (other models keep
transformers' own).
"""

from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .adapters_salad import ADAPTERS, SaladAdapter, TranscriptTokenizers, WhisperTranscript, adapter_class
from .configuration_salad import AudioLengthSpec, SaladConfig
from .modeling_salad import SaladForConditionalGeneration, SaladPreTrainedModel
from .pipeline_salad import ANY_TO_ANY_TASK, PIPELINE_TASK, SaladAnyToAnyPipeline, SaladSpeechToTextPipeline
from .processing_salad import InvalidAudioError, SaladProcessor, add_audio_token, load_audio, resample

AutoConfig.register("salad", SaladConfig, exist_ok=True)
AutoModel.register(SaladConfig, SaladForConditionalGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(SaladConfig, SaladForConditionalGeneration, exist_ok=True)
AutoProcessor.register(SaladConfig, SaladProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=SaladSpeechToTextPipeline, pt_model=AutoModel, type="multimodal"
)
SaladConfig.register_for_auto_class()
SaladForConditionalGeneration.register_for_auto_class("AutoModel")
SaladProcessor.register_for_auto_class()

__all__ = [
    "ADAPTERS",
    "ANY_TO_ANY_TASK",
    "PIPELINE_TASK",
    "SaladAdapter",
    "InvalidAudioError",
    "AudioLengthSpec",
    "SaladConfig",
    "SaladForConditionalGeneration",
    "SaladPreTrainedModel",
    "SaladAnyToAnyPipeline",
    "SaladProcessor",
    "SaladSpeechToTextPipeline",
    "TranscriptTokenizers",
    "WhisperTranscript",
    "adapter_class",
    "add_audio_token",
    "load_audio",
    "resample",
]
