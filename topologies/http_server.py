"""The internet host's web server: files by GET, and uploads by POST or PUT.

`python3 -m http.server` answers POST with 501 and closes the socket before the
body arrives, so a device "uploading to the cloud" would send almost nothing.
This one reads and discards the body (bounded) and answers with its size.
"""

import argparse
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

MAX_UPLOAD = 64 * 1024 * 1024


class Handler(SimpleHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get('Content-Length') or 0)
        if length < 0 or length > MAX_UPLOAD:
            self.send_error(413, 'upload too large')
            return
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        body = ('received %d bytes\n' % (length - left)).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST

    def log_message(self, fmt, *args):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--bind', required=True)
    ap.add_argument('--port', type=int, default=80)
    ap.add_argument('--directory', required=True)
    args = ap.parse_args()
    handler = functools.partial(Handler, directory=args.directory)
    ThreadingHTTPServer((args.bind, args.port), handler).serve_forever()


if __name__ == '__main__':
    main()
