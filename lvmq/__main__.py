import sys

from lvmq.cli import main

sys.exit(main())
