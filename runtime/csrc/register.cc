// CoGenesis Edge kernels: registration of our ops with onnxruntime (SessionOptions.register_custom_ops_library).
#include "kernels.h"

extern "C" {

// The domain name the exported kernel graph uses; Python reads it to check it matches its graph.
const char* cogenesis_kernels_domain() { return "cogenesis"; }

OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot report without an api; onnxruntime then fails on the unknown op
  Ort::InitApi(api);
  static Ort::CustomOpDomain domain{"cogenesis"};
  static bool added = false;
  if (!added) {
    domain.Add(q41_matmul_op());
    domain.Add(gqa_op());
    domain.Add(q8_0_matmul_op());
    added = true;
  }
  Ort::UnownedSessionOptions so(options);
  try {
    so.Add(domain);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

}  // extern "C"
