from setuptools import setup

setup(
    name="omni_edge_ros",
    version="0.1.0",
    packages=["omni_edge_ros"],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/omni_edge_ros"]),
        ("share/omni_edge_ros", ["package.xml"]),
        ("share/omni_edge_ros/launch", ["launch/omni_edge.launch.py"]),
        ("share/omni_edge_ros/config", ["config/params.yaml"]),
    ],
    install_requires=["setuptools", "omni-edge[ort,live]"],
    entry_points={"console_scripts": ["omni_edge_node = omni_edge_ros.node:main"]},
)
