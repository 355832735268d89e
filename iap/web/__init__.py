"""The aiohttp shell: listeners, the request pipeline, iap's own endpoints and error pages."""
