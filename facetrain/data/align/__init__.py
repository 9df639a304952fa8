"""Face detection (MTCNN) and alignment onto the ArcFace crop template, for photos and folders."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "aligner": ("Aligned", "Aligner", "choose_face", "crop_with_landmarks"),
        "detect": ("Face", "FaceDetector"),
        "folder": ("AlignResult", "align_folder"),
        "geometry": ("umeyama", "warp"),
        "options": (
            "ARCFACE_112", "AlignOptions", "check_folders", "check_options", "parse_size", "require_photos",
            "template",
        ),
    },
)  # fmt: skip
