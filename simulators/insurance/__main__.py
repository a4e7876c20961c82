import sys

from simulators.insurance.app import main

sys.exit(main())
