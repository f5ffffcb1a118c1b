"""A Django Channels consumer as teams have them before they move to Switchboard: it joins the
group its path names and forwards each `chat.message` to its socket. The bridge's tests run it
beside Switchboard clients in the same group."""

from __future__ import annotations

import json

from channels.generic.websocket import AsyncWebsocketConsumer


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        # /chat/<room>/
        self.group = "chat_" + self.scope["path"].strip("/").split("/")[-1]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def chat_message(self, event):
        await self.send(text_data=json.dumps(event))
