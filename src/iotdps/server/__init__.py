"""Device-facing listeners: TLS seam, MQTT listener, websocket bridge, aiohttp apps."""
