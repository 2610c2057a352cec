"""A Google Cloud Storage stand-in on loopback: the JSON API's object calls, kept in memory, for the bucket tests.

It serves what the two clients a run uses send (read from gcsfs's core.py and from TensorStore's requests, logged
against a server): object metadata, media download (ranges; `x-goog-generation` on every response), media,
multipart and resumable uploads (308 until the last chunk), listing by prefix and delimiter with pages, delete,
rewrite (copy), the batch endpoint (DELETE parts; how gcsfs removes many objects), and the request preconditions
`ifGenerationMatch` (0: the object must not exist; 412 when it fails) and `ifGenerationNotMatch` (304 on a read),
as the Cloud Storage JSON API reference describes them. Every object gets a new generation when written.
Anything else answers 501, so that a client reaching for more shows up as a failure, not as silent success.
"""

import base64
import datetime
import hashlib
import http.server
import json
import re
import threading
import urllib.parse


class Store:
  """Objects by (bucket, name): (data, generation)."""

  def __init__(self):
    self.objects, self.lock, self._generation = {}, threading.Lock(), 1_000
    self.uploads = {}  # Resumable upload id -> [bucket, name, bytearray, precondition].

  def put(self, bucket: str, name: str, data: bytes) -> dict:
    with self.lock:
      self._generation += 1
      self.objects[bucket, name] = (bytes(data), self._generation)
      return self.resource(bucket, name)

  def resource(self, bucket: str, name: str) -> dict:
    data, generation = self.objects[bucket, name]
    stamp = datetime.datetime.fromtimestamp(generation / 1e6 + 1.7e9, datetime.UTC).isoformat().replace('+00:00', 'Z')
    return {
      'kind': 'storage#object',
      'id': f'{bucket}/{name}/{generation}',
      'name': name,
      'bucket': bucket,
      'size': str(len(data)),
      'generation': str(generation),
      'metageneration': '1',
      'contentType': 'application/octet-stream',
      'storageClass': 'STANDARD',
      'timeCreated': stamp,
      'updated': stamp,
      'md5Hash': base64.b64encode(hashlib.md5(data).digest()).decode(),
    }


def _precondition_fails(store: Store, bucket: str, name: str, query: dict) -> bool:
  """Whether ifGenerationMatch (0: must not exist) rules the request out."""
  if 'ifGenerationMatch' not in query:
    return False
  current = store.objects.get((bucket, name))
  return (current[1] if current else 0) != int(query['ifGenerationMatch'])


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'
  store: Store  # Set by serve().

  def log_message(self, format, *args):  # noqa: A002  quiet: the test's output is the run's.
    del format, args

  # Plumbing.

  def _body(self) -> bytes:
    if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
      data = bytearray()
      while True:
        size = int(self.rfile.readline().split(b';')[0].strip(), 16)
        if not size:
          self.rfile.readline()
          return bytes(data)
        data += self.rfile.read(size)
        self.rfile.readline()
    return self.rfile.read(int(self.headers.get('Content-Length') or 0))

  def _send(self, status: int, body: bytes = b'', headers: dict | None = None, kind: str = 'application/json'):
    self.send_response(status)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.send_header('Content-Type', kind)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(body)

  def _json(self, status: int, value: dict, headers: dict | None = None):
    self._send(status, json.dumps(value).encode(), headers)

  def _error(self, status: int, message: str):
    self._json(status, {'error': {'code': status, 'message': message}})

  def _route(self):
    split = urllib.parse.urlsplit(self.path)
    query = {key: values[-1] for key, values in urllib.parse.parse_qs(split.query).items()}
    return split.path, query

  # Verbs.

  def do_GET(self):
    path, query = self._route()
    if match := re.fullmatch(r'/(?:download/)?storage/v1/b/([^/]+)/o/(.+)', path):
      bucket, name = match[1], urllib.parse.unquote(match[2])
      return self._media(bucket, name, query) if query.get('alt') == 'media' else self._metadata(bucket, name, query)
    if match := re.fullmatch(r'/storage/v1/b/([^/]+)/o/?', path):
      return self._list(match[1], query)
    if match := re.fullmatch(r'/storage/v1/b/([^/]+)/?', path):
      return self._json(200, {'kind': 'storage#bucket', 'name': match[1], 'locationType': 'multi-region'})
    return self._error(501, f'GET {path} is not served by the stand-in')

  do_HEAD = do_GET

  def do_POST(self):
    path, query = self._route()
    body = self._body()
    if match := re.fullmatch(r'/upload/storage/v1/b/([^/]+)/o', path):
      return self._upload(match[1], query, body)
    if match := re.fullmatch(r'/storage/v1/b/([^/]+)/o/(.+)/(?:rewriteTo|copyTo)/b/([^/]+)/o/(.+)', path):
      return self._copy(match[1], urllib.parse.unquote(match[2]), match[3], urllib.parse.unquote(match[4]), query)
    if path == '/batch/storage/v1':
      return self._batch(body)
    return self._error(501, f'POST {path} is not served by the stand-in')

  def do_PUT(self):
    path, query = self._route()
    body = self._body()
    if re.fullmatch(r'/upload/storage/v1/b/([^/]+)/o', path) and 'upload_id' in query:
      return self._chunk(query['upload_id'], body)
    return self._error(501, f'PUT {path} is not served by the stand-in')

  def do_DELETE(self):
    path, query = self._route()
    if match := re.fullmatch(r'/storage/v1/b/([^/]+)/o/(.+)', path):
      status = self._delete(match[1], urllib.parse.unquote(match[2]), query)
      return self._send(status) if status == 204 else self._error(status, f'cannot delete {match[2]}')
    return self._error(501, f'DELETE {path} is not served by the stand-in')

  # Objects.

  def _metadata(self, bucket, name, query):
    if (bucket, name) not in self.store.objects:
      return self._error(404, f'No such object: {bucket}/{name}')
    if _precondition_fails(self.store, bucket, name, query):
      return self._error(412, 'Precondition Failed')
    return self._json(200, self.store.resource(bucket, name))

  def _media(self, bucket, name, query):
    found = self.store.objects.get((bucket, name))
    if found is None:
      return self._error(404, f'No such object: {bucket}/{name}')
    data, generation = found
    headers = {'x-goog-generation': str(generation), 'x-goog-metageneration': '1'}
    if _precondition_fails(self.store, bucket, name, query):
      return self._error(412, 'Precondition Failed')
    if query.get('ifGenerationNotMatch') == str(generation):
      return self._send(304, b'', headers)
    ranged = re.fullmatch(r'bytes=(\d*)-(\d*)', self.headers.get('Range', '').strip())
    if not ranged:
      return self._send(200, data, headers, 'application/octet-stream')
    if ranged[1]:
      start, end = int(ranged[1]), min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
    else:  # A suffix: the last N bytes.
      start, end = max(len(data) - int(ranged[2]), 0), len(data) - 1
    if start >= len(data) and data:
      return self._send(416, b'', {**headers, 'Content-Range': f'bytes */{len(data)}'})
    headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
    return self._send(206, data[start : end + 1], headers, 'application/octet-stream')

  def _list(self, bucket, query):
    prefix, delimiter = query.get('prefix', ''), query.get('delimiter', '')
    entries = {}  # Sort key -> ('item', name) or ('prefix', prefix).
    with self.store.lock:
      names = sorted(name for b, name in self.store.objects if b == bucket and name.startswith(prefix))
    for name in names:
      if query.get('startOffset') and name < query['startOffset']:
        continue
      if query.get('endOffset') and name >= query['endOffset']:
        continue
      rest = name[len(prefix) :]
      if delimiter and delimiter in rest:
        folder = prefix + rest[: rest.index(delimiter) + len(delimiter)]
        entries[folder] = ('prefix', folder)
      else:
        entries[name] = ('item', name)
    keys = [key for key in sorted(entries) if not query.get('pageToken') or key > query['pageToken']]
    page = keys[: int(query['maxResults'])] if query.get('maxResults') else keys
    out = {
      'kind': 'storage#objects',
      'items': [self.store.resource(bucket, entries[key][1]) for key in page if entries[key][0] == 'item'],
      'prefixes': [entries[key][1] for key in page if entries[key][0] == 'prefix'],
    }
    if len(page) < len(keys):
      out['nextPageToken'] = page[-1]
    return self._json(200, out)

  def _upload(self, bucket, query, body):
    kind = query.get('uploadType', 'media')
    if 'upload_id' in query:  # A resumable upload's chunk (gcsfs sends them by POST).
      return self._chunk(query['upload_id'], body)
    if kind == 'resumable':
      name = query.get('name') or json.loads(body or b'{}')['name']
      upload = f'{len(self.store.uploads)}-{abs(hash(name))}'
      self.store.uploads[upload] = [bucket, name, bytearray(), query]
      location = f'http://{self.headers["Host"]}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={upload}'
      return self._send(200, b'', {'Location': location})
    if kind not in ('media', 'multipart'):
      return self._error(501, f'uploadType={kind} is not served by the stand-in')
    name, data = (query['name'], body) if kind == 'media' else self._multipart(body)
    if _precondition_fails(self.store, bucket, name, query):
      return self._error(412, 'Precondition Failed')
    return self._json(200, self.store.put(bucket, name, data))

  def _multipart(self, body: bytes) -> tuple[str, bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', self.headers['Content-Type'])[1].encode()
    parts = [part for part in body.split(b'--' + boundary) if part.strip() not in (b'', b'--')]
    metadata, media = (re.split(rb'\r?\n\r?\n', part.lstrip(b'\r\n'), maxsplit=1)[1] for part in parts[:2])
    return json.loads(metadata)['name'], media[:-2] if media.endswith(b'\r\n') else media.removesuffix(b'\n')

  def _chunk(self, upload: str, body: bytes):
    bucket, name, data, query = self.store.uploads[upload]
    ranged = re.fullmatch(r'bytes (\d+)-(\d+)/(\d+|\*)|bytes \*/(\d+)', self.headers.get('Content-Range', ''))
    if ranged and ranged[1] is not None:
      del data[int(ranged[1]) :]
      data += body
      total = None if ranged[3] == '*' else int(ranged[3])
    else:
      total = int(ranged[4]) if ranged else len(data) + len(body)
      data += body
    if total is None or len(data) < total:
      return self._send(308, b'', {'Range': f'bytes=0-{len(data) - 1}'} if data else {})
    del self.store.uploads[upload]
    if _precondition_fails(self.store, bucket, name, query):
      return self._error(412, 'Precondition Failed')
    return self._json(200, self.store.put(bucket, name, data))

  def _delete(self, bucket, name, query) -> int:
    with self.store.lock:
      if (bucket, name) not in self.store.objects:
        return 404
      if _precondition_fails(self.store, bucket, name, query):
        return 412
      del self.store.objects[bucket, name]
    return 204

  def _copy(self, bucket, name, target_bucket, target, query):
    if (bucket, name) not in self.store.objects:
      return self._error(404, f'No such object: {bucket}/{name}')
    if _precondition_fails(self.store, target_bucket, target, query):
      return self._error(412, 'Precondition Failed')
    resource = self.store.put(target_bucket, target, self.store.objects[bucket, name][0])
    size = resource['size']
    return self._json(200, {'kind': 'storage#rewriteResponse', 'done': True, 'resource': resource,
                            'totalBytesRewritten': size, 'objectSize': size})  # fmt: skip

  def _batch(self, body: bytes):
    boundary = re.search(r'boundary="?([^";]+)"?', self.headers['Content-Type'])[1]
    answers = []
    for part in body.decode().split('--' + boundary):
      request = re.search(r'^(DELETE) (/storage/v1/b/([^/]+)/o/([^?\s]+))(?:\?(\S*))? HTTP/1\.1', part, re.M)
      if request is None:
        continue
      query = {key: values[-1] for key, values in urllib.parse.parse_qs(request[5] or '').items()}
      status = self._delete(request[3], urllib.parse.unquote(request[4]), query)
      phrase = {204: 'No Content', 404: 'Not Found', 412: 'Precondition Failed'}[status]
      answers.append(f'Content-Type: application/http\r\n\r\nHTTP/1.1 {status} {phrase}\r\nContent-Length: 0\r\n\r\n')
    reply = 'batch_stand_in'
    text = ''.join(f'--{reply}\r\n{answer}\r\n' for answer in answers) + f'--{reply}--\r\n'
    return self._send(200, text.encode(), kind=f'multipart/mixed; boundary={reply}')


def serve() -> tuple[http.server.ThreadingHTTPServer, Store]:
  """Starts the stand-in on a free loopback port in a daemon thread; (server, its store)."""
  store = Store()
  handler = type('BoundHandler', (Handler,), {'store': store})
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True, name='gcs-stand-in').start()
  return server, store
