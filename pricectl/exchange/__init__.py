"""The real Binance adapters: the market-data WebSocket and the REST client."""
