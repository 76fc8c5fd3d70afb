"""``carls bench``: each benchmark measures carls against the ceiling of its own tools,
side by side in one run (raw aiokafka and Faust for the makers' consumption, the
cassandra-driver's best for the bank, plain Keras ``fit`` for the trainer), and prints
ratios. Benchmarks stand outside the library's layers: they may drive any layer and the
raw clients of Kafka and Cassandra directly, and nothing in the library imports them."""
