"""Insurance mobile payment (6201 / 6202 / 6203 / 6301) with the SM2/SM4 envelope."""
