"""Constants shared by several modules, each defined once."""

# OpenAI CLIP normalisation, used by ImageBind for images and video frames (reference.md 2.1).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The largest logit scale ImageBind's LearnableLogitScaling allows (reference.md 1.6).
MAX_LOGIT_SCALE = 100.0
