"""The application shell: the `lvmq` root command and the demo. It sits on top and may import
every other package; nothing imports it."""
