"""What is cached on disk and how: ONNX export (:mod:`.onnx_export`), TensorRT builds (:mod:`.trt_build`, TensorRT
for RTX in :mod:`.trt_rtx`), engines and their keys (:mod:`.engine_manager`), compiled PyTorch kernels
(:mod:`.compiled_cache`), and the rules every cache entry follows: sidecars, locks, atomic writes
(:mod:`.engine_cache`)."""
