import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    params = os.path.join(get_package_share_directory("omni_edge_ros"), "config", "params.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument("bundle", description="omni-export bundle directory"),
            Node(
                package="omni_edge_ros",
                executable="omni_edge_node",
                name="omni_edge",
                parameters=[params, {"bundle": LaunchConfiguration("bundle")}],
                remappings=[("audio", "/audio/audio"), ("image", "/camera/image_raw")],
            ),
        ]
    )
