"""The HTTP gateway (`lvmq gateway`, extra ``[gateway]``): chat over HTTP and a chat page, no torch."""
