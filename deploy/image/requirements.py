"""setup.cfg's install_requires (and the named extras) as a requirements file, so the image
installs the Python stack in a layer of its own, before the project's code is copied:
    python3 requirements.py setup.cfg "[gpu]" > requirements.txt"""

import configparser
import sys

cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
extras = [e for e in (sys.argv[2] if len(sys.argv) > 2 else "").strip("[]").split(",") if e]
sections = [cfg["options"]["install_requires"]] + [cfg["options.extras_require"][e] for e in extras]
for section in sections:
    for line in section.splitlines():
        requirement = line.split("#")[0].strip()
        if requirement:
            print(requirement)
