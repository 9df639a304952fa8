"""Upper bounds of every size and count the config accepts, far above real use."""

MAX_SEED = 2**32 - 1
# Upper bounds of every size and count, far above real use, so that no value can ask for absurd memory.
MAX_IMAGE_SIZE = 1024  # pixels per side: face models use 112-224
MAX_CROP = 100_000  # pixels per side of a centre crop
MAX_BATCH = 65_536
MAX_COUNT = 100_000_000  # identities (WebFace42M has 2.06M), images per identity
MAX_STEPS = 1_000_000_000
MAX_BATCH_INPUT_GB = 32  # one batch of float32 input images, before any activation
MAX_PROBLEMS = 20  # listed in one config error; the rest are counted
