"""Many nodes: the shared call state in Redis (:mod:`.store`), this process as a node (:mod:`.node`), and what the app does with them (:mod:`.service`)."""
