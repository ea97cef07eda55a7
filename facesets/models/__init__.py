"""The models: face model packs and their identity (:mod:`.packs`), onnxruntime sessions and providers
(:mod:`.runtime`), image decoding with its guards (:mod:`.decode`), SCRFD detection, alignment and the
recognizer (:mod:`.faces`), and the CLIP towers (:mod:`.clip`, :mod:`.clipvisual`, :mod:`.cliptext`)."""
