"""Exchange adapters: the Binance WebSocket and REST clients, and the local simulator."""
