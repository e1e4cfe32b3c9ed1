"""voicebridge: answer Azure Communication Services calls with an Azure Voice Live agent."""

__version__ = "0.1.0"
