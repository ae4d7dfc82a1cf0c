"""
The HTTP inspector of exposed tunnels (issue 13).

On the host side of a TCP tunnel, an L{beam.tunnel.inspect.http1.HTTPObserver}
reads copies of the bytes the splice forwards and turns the HTTP/1.x
exchanges it recognises into L{beam.tunnel.inspect.store.Exchange}s kept by
a bounded L{beam.tunnel.inspect.store.RequestStore}; it never writes,
delays or changes a byte of the tunnel.  The modules are imported by name
(nothing is re-exported here) so that importing the package costs nothing.
"""
