"""ROS 2 node: microphone and camera topics in, the reply's text and audio out, reset and cancel services.

    ros2 launch omni_edge_ros omni_edge.launch.py bundle:=/opt/bundles/omni3b

Subscribes  audio     audio_common_msgs/AudioData   16 kHz mono s16le PCM (e.g. audio_capture, format wave)
            image     sensor_msgs/Image             rgb8 or bgr8, fed to each user turn with camera:=true
Publishes   text      std_msgs/String               text deltas as they stream
            audio_out audio_common_msgs/AudioData   24 kHz mono s16le PCM chunks as they stream
Services    reset     std_srvs/Trigger              new conversation
            cancel    std_srvs/Trigger              stop the reply, keep what was heard
Parameters  bundle (string), speaker (Chelsie|Ethan), max_new_tokens, max_codec_tokens, speak, camera, threads
"""

from __future__ import annotations

import numpy as np
import rclpy
from audio_common_msgs.msg import AudioData
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from omni_edge_ros.adapter import LiveAdapter


class OmniEdgeNode(Node):
    def __init__(self):
        super().__init__("omni_edge")
        bundle = self.declare_parameter("bundle", "").value
        speaker = self.declare_parameter("speaker", "Chelsie").value
        max_new_tokens = self.declare_parameter("max_new_tokens", 128).value
        speak = self.declare_parameter("speak", True).value
        threads = self.declare_parameter("threads", 0).value
        max_codec_tokens = self.declare_parameter("max_codec_tokens", 1024).value
        camera = self.declare_parameter("camera", False).value
        self.text_pub = self.create_publisher(String, "text", 10)
        self.audio_pub = self.create_publisher(AudioData, "audio_out", 50)
        self.adapter = LiveAdapter(
            bundle,
            self._text,
            self._audio,
            speaker,
            max_new_tokens,
            speak,
            threads,
            max_codec_tokens,
            on_error=self.get_logger().error,
            camera=camera,
        )
        self.create_subscription(AudioData, "audio", lambda m: self.adapter.on_audio_message(m.data), 100)
        self.create_subscription(Image, "image", self._image, 5)
        self.create_service(Trigger, "reset", lambda req, res: self._done(res, self.adapter.reset))
        self.create_service(Trigger, "cancel", lambda req, res: self._done(res, self.adapter.cancel))

    def _image(self, msg: Image) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.adapter.on_image_message(stamp, msg.height, msg.width, msg.encoding, msg.step, msg.data)

    def _text(self, text: str) -> None:
        self.text_pub.publish(String(data=text))

    def _audio(self, samples: np.ndarray, rate: int) -> None:
        pcm = np.clip(np.floor(samples * 32768), -32768, 32767).astype("<i2")
        self.audio_pub.publish(AudioData(data=pcm.tobytes()))

    @staticmethod
    def _done(response, action):
        action()
        response.success = True
        return response


def main(args=None):
    rclpy.init(args=args)
    node = OmniEdgeNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.adapter.close()
        node.destroy_node()
        rclpy.try_shutdown()
