// CoGenesis Edge kernels: shared declarations. Each op lives in its own file; register.cc adds them to the
// "cogenesis" domain. The C++ API is header-only; ORT_API_MANUAL_INIT: RegisterCustomOps sets the api pointer.
#pragma once
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

const OrtCustomOp* q41_matmul_op();  // q41_matmul.cc: exact GGUF Q4_1 linear
const OrtCustomOp* gqa_op();         // gqa_decode.cc: GroupQueryAttention with our one-token decode step
