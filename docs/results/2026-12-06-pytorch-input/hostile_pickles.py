"""Five hostile PyTorch zips whose data.pkl (64 MiB) makes an unpickler build as much as it can from few bytes:
marks, copies of one value, memo entries, Nones, a list appended to itself. Each must fail fast in bounded memory:
`/usr/bin/time -f "%e s %M KB" ultradelta compress --base F --finetuned F -o /tmp/x.udelta` for each file."""
import struct
import zipfile

N = 64 * 1024 * 1024 - 64


def save(name, pkl):
    with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)


save("marks.bin", b"\x80\x02" + b"(" * (N - 3) + b".")
save("dups.bin", b"\x80\x02N" + b"2" * (N - 4) + b".")
save("selfappend.bin", b"\x80\x02]" + b"2a" * ((N - 4) // 2) + b".")
save("memo.bin", b"\x80\x02N" + b"".join(b"r" + struct.pack("<I", i) for i in range((N - 4) // 5)) + b".")
save("nones.bin", b"\x80\x02" + b"N" * (N - 3) + b".")
