"""The inbox watcher: queues every completely written inbox file exactly once (imports no TensorFlow)."""
