"""ROS 2 adapter for omni_edge.live: the node (node.py, needs rclpy) over a transport-free core (adapter.py)."""
