import re, json, sys
src = open(sys.argv[1]).read()
# drop comments
src = re.sub(r'/\*.*?\*/', '', src, flags=re.S)
src = re.sub(r'//[^\n]*', '', src)
want = ["Profile", "ProfileMeta", "Category", "ExtensionTable", "Lib", "RawThread",
        "RawSamplesTable", "RawStackTable", "FrameTable", "FuncTable", "ResourceTable",
        "NativeSymbolTable", "RawMarkerTable"]
out = {}
for name in want:
    m = re.search(r'export type ' + name + r'\s*=\s*\{\|', src)
    assert m, name
    i = m.end(); depth = 1; body_start = i
    while depth:
        if src.startswith('{|', i) or src[i] in '{([<':
            depth += 1; i += 2 if src.startswith('{|', i) else 1; continue
        if src.startswith('|}', i) or src[i] in '})]>':
            depth -= 1; i += 2 if src.startswith('|}', i) else 1; continue
        i += 1
    body = src[body_start:i-2]
    # top-level fields: split at depth 0 commas
    fields = []; d = 0; cur = ''
    j = 0
    while j < len(body):
        c = body[j]
        if body.startswith('{|', j) or c in '{([<': d += 1
        elif body.startswith('|}', j) or c in '})]>': d -= 1
        if c == ',' and d == 0:
            fields.append(cur); cur = ''
        else:
            cur += c
        j += 1
    fields.append(cur)
    req, opt = [], []
    for f in fields:
        f = f.strip()
        if not f or f.startswith('...'):
            continue
        fm = re.match(r"""['"]?([\w+$]+)['"]?\s*(\??)\s*:""", f)
        assert fm, (name, f)
        (opt if fm.group(2) else req).append(fm.group(1))
    out[name] = {"required": sorted(req), "optional": sorted(opt)}
print(json.dumps(out, indent=2, sort_keys=True))
