"""Live interaction: microphone and camera in as they arrive, turn-taking, barge-in; no transport.

    from omni_edge.live import LiveConversation, LiveOptions
    live = LiveConversation(session, LiveOptions(speech=SpeechOptions()))

omni-chat (omni_edge.live.chat), examples/live_loop.py and examples/ros2 drive it.
"""

from omni_edge.live.loop import BargeIn, LiveConversation, LiveEvent, LiveOptions, SpeechStarted, TurnEnded, rewind
from omni_edge.live.turn import CausalLogMel, LiveTurn
from omni_edge.live.vad import VoiceActivity

__all__ = [
    "BargeIn",
    "CausalLogMel",
    "LiveConversation",
    "LiveEvent",
    "LiveOptions",
    "LiveTurn",
    "SpeechStarted",
    "TurnEnded",
    "VoiceActivity",
    "rewind",
]
