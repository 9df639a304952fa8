"""Deploy: export the embedder (TorchScript/ONNX with metadata), load it, verify pairs and embed folders."""

from facetrain.deploy.embed import embed_folder, find_images
from facetrain.deploy.export import export_model, threshold_from_eval_json, verify_pair

__all__ = ["embed_folder", "export_model", "find_images", "threshold_from_eval_json", "verify_pair"]
