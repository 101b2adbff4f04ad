import sys

from jaxfp4._src.cli.main import main

sys.exit(main())
